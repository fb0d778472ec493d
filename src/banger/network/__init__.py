"""Host networking for bridged guests (bridge, TAP, NAT, IPAM, DNS) and the ssh_config it feeds."""
