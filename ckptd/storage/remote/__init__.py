"""The bucket: store, transfers, uploader and its queue, the lease, lineage, resume from remote,
listing."""
