module fixture/busyservice

go 1.21
