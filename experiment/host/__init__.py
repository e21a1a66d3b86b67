"""The host and its engines: what the machine is and allows, the Docker engines, the images and their
publishing, the preflight and --tune-host, the checks of a point, the metadata of a run."""
