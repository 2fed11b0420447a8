"""The corridor every call crosses, one concern per stage and one stage per module,
outermost first: auth (credential -> identity -> namespace -> call-table rule), quota
(per-namespace concurrency), telemetry (stats, span), errors (exception -> status,
deadline). `_stage` holds what they share and the server's one generic handler that runs
them: each method's handler is wrapped once with the stages that apply to it."""
