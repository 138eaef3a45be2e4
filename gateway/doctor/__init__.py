"""`gateway doctor`: a preflight that checks what routing.yaml needs and explains each failure.
Starts nothing it leaves behind and never polls the control plane (a poll would take real commands).

One module per kind of check (`config_checks`, `network_checks`, `control_plane`, `servers`), the
probes they share (`probes`), what the file names (`plan`), the report's shape (`report`) and the
order they run in (`run`).
"""
