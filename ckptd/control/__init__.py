"""The control socket: ZeroMQ ROUTER/PUB with CURVE keys, and the control commands."""
