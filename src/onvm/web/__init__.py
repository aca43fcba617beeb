"""The manager's web endpoint: JSON API, live updates, dashboard and metrics."""
