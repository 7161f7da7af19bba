"""The bottom of the stack, shared by every command and the runtime: errors, interrupts, progress lines,
third-party output capture. Imports nothing but the standard library (and vitmsn.runtime.manifest lazily)."""
