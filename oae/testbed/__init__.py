"""Namespace testbeds: kernel objects (namespaces, veth), topology files, a user-space
impairing bridge, and the `oae testbed` commands. Everything created carries a run prefix
(`oae` + a short id) so `oae testbed clean` can remove it, and only it, even after a crash."""
