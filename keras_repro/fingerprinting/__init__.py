"""What a fingerprint is: digests of a model's variables, checksums, comparison, diagnosis, configuration and environment."""
