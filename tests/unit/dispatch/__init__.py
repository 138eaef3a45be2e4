"""gateway/dispatch/: deadlines, rate limits and concurrency caps."""
