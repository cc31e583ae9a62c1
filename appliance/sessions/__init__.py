"""Sessions: the node's hub, the recorder and uploader, the recording store, the player."""
