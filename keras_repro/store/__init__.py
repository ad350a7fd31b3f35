"""The fingerprint file: the FingerprintLog type, the HDF5 writer and reader, the append-only tail, references and recording sessions."""
