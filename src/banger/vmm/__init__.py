"""VMM drivers behind one protocol (base.py): QEMU (qemu.py) and Firecracker (firecracker.py)."""
