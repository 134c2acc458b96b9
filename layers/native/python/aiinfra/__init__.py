"""aiinfra: embed, search and memory functions for AWS Lambda on one native layer."""
