"""The supervisor: the arbiter loop (the one owner of state), launching, stopping (what SIGTERM
does), restarts."""
