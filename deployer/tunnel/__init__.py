"""deployer tunnel: keep reverse forwards on a jump host up, verified end to end."""
