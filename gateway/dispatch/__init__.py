"""One command's life: deadline, limits, the channel's frames posted back, errors turned into wire
responses (`dispatcher`); rate limits and concurrency caps (`limits`). Parses no configuration."""
