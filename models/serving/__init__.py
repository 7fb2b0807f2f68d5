"""What jobs need of a SavedModel at run time: the serving contract (signatures, their methods'
columns and PredictionLogs, feature specs, example parsing, the TF Serving layout), the engines
that call a signature on serialized records, and the errors they report. Nothing here imports
transforms/ or pipelines/."""
