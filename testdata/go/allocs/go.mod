module fixture/allocs

go 1.21
