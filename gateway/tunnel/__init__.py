"""The control-plane client: the poll loop and response POSTs (`client`), the keep-alive HTTP/1.1
client under them (`http1`), the rotating API key (`credentials`). Knows nothing of upstreams."""
