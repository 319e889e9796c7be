module fixture/leakset

go 1.21
