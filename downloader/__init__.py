"""The download service: URL sources, part claiming, async fetching, image processing."""
