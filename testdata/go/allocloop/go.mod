module fixture/allocloop

go 1.21
