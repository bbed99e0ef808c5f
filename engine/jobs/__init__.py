"""Jobs, from submit to the last frame on disk.

manager.py keeps the job table, the queue, the worker and the failure policy, and hands groups
of jobs to an executor. submit.py and keys.py check a request and key its frames at submit.
runners.py picks one runner per job kind (batch.py, flow.py, finalize.py, video.py); a runner
gets a RunContext (context.py), never the manager, and image runners run inside one
image_session (session.py). writer.py is the one path a finished frame takes to the cache.
"""
