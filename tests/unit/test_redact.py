"""Secret masking: whole texts, nested objects, and streams split at arbitrary points."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runbook.redact import MASK, Redactor, StreamRedactor


def stream(redactor: Redactor, chunks: list[str]) -> str:
    s = StreamRedactor(redactor)
    return "".join(s.feed(c) for c in chunks) + s.flush()


def test_redact_masks_every_secret_longest_first() -> None:
    r = Redactor(["pass", "hunter2pass", ""])
    assert r.any
    assert r.redact("pw=hunter2pass and pass") == f"pw={MASK} and {MASK}"


def test_no_secrets_is_identity() -> None:
    r = Redactor(["", ""])
    assert not r.any
    assert r.redact("anything") == "anything"
    assert stream(r, ["a", "b"]) == "ab"


def test_redact_obj_recurses_into_values_and_leaves_keys() -> None:
    r = Redactor(["s3cr3t"])
    obj = {"s3cr3t": ["x s3cr3t", ("s3cr3t", 5)], "n": 1, "none": None}
    assert r.redact_obj(obj) == {"s3cr3t": [f"x {MASK}", (MASK, 5)], "n": 1, "none": None}


def test_stream_masks_a_secret_split_across_reads() -> None:
    r = Redactor(["hunter2pass"])
    s = StreamRedactor(r)
    assert s.feed("user: hunter") == "user: "
    assert s.held == len("hunter")
    assert s.feed("2pass\n") == f"{MASK}\n"
    assert s.flush() == ""


def test_stream_releases_a_prefix_that_turns_out_harmless() -> None:
    s = StreamRedactor(Redactor(["hunter2pass"]))
    assert s.feed("hunter") == ""
    assert s.feed("s are here") == "hunters are here"


def test_stream_flush_emits_the_held_tail() -> None:
    s = StreamRedactor(Redactor(["hunter2pass"]))
    assert s.feed("... hunt") == "... "
    assert s.flush() == "hunt"


def test_stream_prefers_the_longer_secret_when_it_completes_later() -> None:
    r = Redactor(["ab", "abcdef"])
    assert stream(r, ["xab", "cd", "ef!"]) == f"x{MASK}!"
    assert stream(r, ["xab", "cd", "!"]) == f"x{MASK}cd!"


ALPHABET = "ab2\n "
secret_st = st.text(alphabet=ALPHABET, min_size=1, max_size=6)


@st.composite
def text_and_chunks(draw: st.DrawFn) -> tuple[list[str], str, list[str]]:
    secrets = draw(st.lists(secret_st, min_size=1, max_size=4))
    pieces = draw(st.lists(st.one_of(st.sampled_from(secrets), st.text(alphabet=ALPHABET, max_size=8)), max_size=12))
    text = "".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return secrets, text, chunks


@settings(max_examples=500, deadline=None)
@given(text_and_chunks())
def test_stream_equals_whole_text_redaction(case: tuple[list[str], str, list[str]]) -> None:
    secrets, text, chunks = case
    r = Redactor(secrets)
    out = stream(r, chunks)
    assert out == r.redact(text)
    for secret in secrets:
        assert secret not in out
