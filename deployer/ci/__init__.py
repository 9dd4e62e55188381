"""What CI tells deployer and what deployer tells CI: the job's environment, the GitLab API, job summaries."""
