"""The Trio runtime: AF_PACKET sockets driven by the C pump, the async link API, the node
daemon and its control socket."""
