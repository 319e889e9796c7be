module fixture/netpollwake

go 1.21
