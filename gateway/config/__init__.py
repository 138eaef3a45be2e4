"""routing.yaml: its Structs and load-time checks (`routing`), secret references (`secrets`), rate
strings (`rates`). Builds no runtime objects; imports only `gateway.protocol`."""
