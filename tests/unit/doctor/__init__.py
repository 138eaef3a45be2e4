"""gateway/doctor/: the report's shape and rendering, and the checks that can run without a peer."""
