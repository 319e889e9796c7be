module fixture/burst

go 1.21
