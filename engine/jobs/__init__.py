"""Jobs: submitted on the HTTP thread, run one at a time on a worker thread (manager.py), with a
runner per job kind beside it (finalize.py, video.py) and the one path a finished frame takes to
the cache (writer.py)."""
