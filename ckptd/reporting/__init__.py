"""What happened, afterwards: the event history, goodput accounting, the HTML report and Prometheus
metrics."""
