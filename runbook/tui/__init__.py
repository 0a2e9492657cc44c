"""The Textual front end: the operator's cockpit. A front end over the engine; no logic of its own."""
