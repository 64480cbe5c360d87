//! The few system calls that need `unsafe`, each with its SAFETY note.
