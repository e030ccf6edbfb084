"""HTTP routes, one module per resource; each handler is a thin call into server.crud."""
