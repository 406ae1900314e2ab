"""The control socket: ZeroMQ ROUTER/PUB with CURVE keys, the control commands and what ``status``
reports."""
