"""The add-on's side of the engine link: the HTTP client (http.py), the local engine process
(process.py), "Install engine" (install.py), preferences to a running engine (link.py) and the
check that a received frame is a whole PNG (frame_check.py). No bpy: any thread."""
