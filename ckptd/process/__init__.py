"""The job's processes: launch in a session, reap, take the whole tree down, and how each attempt
ended."""
