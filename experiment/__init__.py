"""epollbench: a containerized, reproducible re-run of the 2002 Linux epoll scalability study."""
