module fixture/reach

go 1.21
