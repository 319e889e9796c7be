module fixture/forks

go 1.21
