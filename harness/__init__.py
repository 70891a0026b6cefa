"""What tests/ and bench/ share to run the service for real: free ports, a real gunicorn, the flask CLI, and sample traffic."""
