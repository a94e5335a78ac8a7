"""The webhook sender: turns job status events into signed HTTP deliveries to the endpoints users
registered, at least once, each retried on a schedule and recorded attempt by attempt."""
