"""gateway/config/: routing.yaml loading and its checks, glob patterns."""
