"""What runs when the cluster changes: the CALLBACK runner and TEMPLATES."""
