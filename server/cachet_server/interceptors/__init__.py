"""The corridor every call crosses, one concern per stage and one stage per module,
outermost first: auth (credential -> identity -> namespace -> call-table rule),
telemetry (stats, span), errors (exception -> status, deadline). `_stage` holds what
they share: a stage is an async context manager around the handler, built once per
method."""
