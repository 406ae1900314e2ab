"""The job channel: the socket the training processes talk on, checkpoint requests in flight, and
how ranks agree on one step."""
