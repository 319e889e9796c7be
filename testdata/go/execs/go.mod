module fixture/execs

go 1.21
