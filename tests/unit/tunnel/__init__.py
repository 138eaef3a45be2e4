"""gateway/tunnel/: the poll loop and the keep-alive HTTP/1.1 client."""
