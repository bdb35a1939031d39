"""The build plane: filesystem images, verity, signed disk images and update bundles."""
