"""Ship a host git checkout into a guest and bring the guest's changes back as a patch."""
