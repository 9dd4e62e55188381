"""The webhook fallback: signed requests, the receiver on the target, artifact sources, polling, the CI client."""
